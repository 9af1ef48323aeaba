-- The pets of a former customer go with the customer's identity; a pet waits while a
-- contract (kept by the contracts purpose) still insures it.
JOIN app.customers AS customers ON customers.id = pets.customer_id
