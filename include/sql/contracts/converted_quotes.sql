-- Quotes that became a contract are part of its file: archived with the ended contract.
SELECT q.id,
       c.ended_at AS clock,
       EXISTS (SELECT 1 FROM retention.active_holds AS h
               WHERE (h.table_name, h.record_id) IN (('quotes', q.id), ('contracts', c.id),
                                                     ('customers', c.customer_id))) AS held,
       NULL::text AS waiting_for
FROM app.quotes AS q
JOIN app.contracts AS c ON c.id = q.contract_id
WHERE c.ended_at < %(cutoff)s
