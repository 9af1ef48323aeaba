-- Card / IBAN references held for the payment processor: gone when the contract ends.
JOIN app.contracts AS contracts ON contracts.id = payment_methods.contract_id
