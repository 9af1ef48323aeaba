-- Reimbursements of the claims of ended contracts. A hold on the reimbursement, its claim or
-- its contract keeps it.
SELECT r.id,
       c.ended_at AS clock,
       (EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'reimbursements' AND h.record_id = r.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'claims' AND h.record_id = cl.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'contracts' AND h.record_id = c.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'customers' AND h.record_id = c.customer_id)) AS held,
       NULL::text AS waiting_for
FROM app.reimbursements AS r
JOIN app.claims AS cl ON cl.id = r.claim_id
JOIN app.contracts AS c ON c.id = cl.contract_id
WHERE c.ended_at < %(cutoff)s
