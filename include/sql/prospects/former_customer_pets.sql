-- The pets of a former customer go with the customer's identity; a pet waits while a
-- contract (kept by the contracts purpose) still insures it.
SELECT pet.id,
       c.relationship_ended_at AS clock,
       (EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'pets' AND h.record_id = pet.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'customers' AND h.record_id = c.id)) AS held,
       CASE WHEN EXISTS (SELECT 1 FROM app.contracts AS k WHERE k.pet_id = pet.id)
            THEN 'contracts' END AS waiting_for
FROM app.pets AS pet
JOIN app.customers AS c ON c.id = pet.customer_id
WHERE c.relationship_ended_at < %(cutoff)s
