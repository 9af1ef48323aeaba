-- Reimbursements of the claims of ended contracts.
JOIN app.claims AS claims ON claims.id = reimbursements.claim_id
JOIN app.contracts AS contracts ON contracts.id = claims.contract_id
