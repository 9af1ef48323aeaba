-- Quotes that became a contract are part of its file: archived with the ended contract.
JOIN app.contracts AS contracts ON contracts.id = quotes.contract_id
