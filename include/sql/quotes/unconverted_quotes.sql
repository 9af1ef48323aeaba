-- Quotes never converted into a contract, due `live` after they were issued.
WHERE quotes.contract_id IS NULL
