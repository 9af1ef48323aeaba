-- Quotes never converted into a contract, due `live` after they were issued.
SELECT q.id,
       q.issued_at AS clock,
       EXISTS (SELECT 1 FROM retention.active_holds AS h
               WHERE (h.table_name, h.record_id) IN (('quotes', q.id),
                                                     ('customers', q.customer_id),
                                                     ('prospects', q.prospect_id))) AS held,
       NULL::text AS waiting_for
FROM app.quotes AS q
WHERE q.contract_id IS NULL
  AND q.issued_at < %(cutoff)s
