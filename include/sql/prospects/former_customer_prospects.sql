-- The prospect record of a former customer goes with the customer's identity.
JOIN app.customers AS customers ON customers.id = prospects.customer_id
