-- Claims (and their vet invoice files) of ended contracts. A claim waits while one of its
-- reimbursements is still there (e.g. under a legal hold).
JOIN app.contracts AS contracts ON contracts.id = claims.contract_id
