-- Reimbursements of the claims of ended contracts. A hold on the reimbursement, its claim or
-- its contract keeps it.
SELECT r.id,
       c.ended_at AS clock,
       EXISTS (SELECT 1 FROM retention.active_holds AS h
               WHERE (h.table_name, h.record_id) IN (('reimbursements', r.id),
                                                     ('claims', cl.id),
                                                     ('contracts', c.id),
                                                     ('customers', c.customer_id))) AS held,
       NULL::text AS waiting_for
FROM app.reimbursements AS r
JOIN app.claims AS cl ON cl.id = r.claim_id
JOIN app.contracts AS c ON c.id = cl.contract_id
WHERE c.ended_at < %(cutoff)s
