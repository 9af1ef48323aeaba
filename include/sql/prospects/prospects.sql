-- Prospects who never became customers, due `live` after the last contact. A prospect
-- waits while one of its quotes is still kept.
WHERE prospects.customer_id IS NULL
