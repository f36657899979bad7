--  zgate keeps a key's soft budget on the key itself (LiteLLM keeps it in
--  "LiteLLM_BudgetTable", reached through budget_id). NULL = no soft budget.
ALTER TABLE "LiteLLM_VerificationToken"
    ADD COLUMN IF NOT EXISTS "soft_budget" DOUBLE PRECISION;
