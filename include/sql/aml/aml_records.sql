-- AML / terrorism-financing checks, from the end of the insurance contract they were made for.
JOIN app.contracts AS contracts ON contracts.id = aml_records.contract_id
