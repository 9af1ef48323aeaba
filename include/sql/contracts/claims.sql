-- Claims (and their vet invoice files) of ended contracts. A claim waits while one of its
-- reimbursements is still there (e.g. under a legal hold).
SELECT cl.id,
       c.ended_at AS clock,
       (EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'claims' AND h.record_id = cl.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'contracts' AND h.record_id = c.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'customers' AND h.record_id = c.customer_id)) AS held,
       CASE WHEN EXISTS (SELECT 1 FROM app.reimbursements AS r WHERE r.claim_id = cl.id)
            THEN 'reimbursements' END AS waiting_for
FROM app.claims AS cl
JOIN app.contracts AS c ON c.id = cl.contract_id
WHERE c.ended_at < %(cutoff)s
