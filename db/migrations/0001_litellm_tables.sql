--  The tables zgate shares with a LiteLLM proxy, with LiteLLM's quoted names,
--  column names and types (Prisma's mapping: Float = DOUBLE PRECISION,
--  DateTime = TIMESTAMP(3) in UTC, Json = JSONB, String[] = TEXT[]).
--
--  Each table is created with its primary key only, and every other column
--  is added when missing: against a database a LiteLLM proxy created, this
--  keeps every row and every existing column as it is and adds only what an
--  older schema lacks. Index names are Prisma's, so LiteLLM's own indexes
--  are recognised instead of built a second time.
--
--  Nothing here drops, renames, retypes or rewrites anything.

--  Virtual keys: token is the lowercase hex SHA-256 of the whole key string
CREATE TABLE IF NOT EXISTS "LiteLLM_VerificationToken" (
    "token" TEXT NOT NULL,
    CONSTRAINT "LiteLLM_VerificationToken_pkey" PRIMARY KEY ("token")
);
ALTER TABLE "LiteLLM_VerificationToken"
    ADD COLUMN IF NOT EXISTS "key_name" TEXT,
    ADD COLUMN IF NOT EXISTS "key_alias" TEXT,
    ADD COLUMN IF NOT EXISTS "soft_budget_cooldown" BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS "spend" DOUBLE PRECISION NOT NULL DEFAULT 0.0,
    ADD COLUMN IF NOT EXISTS "expires" TIMESTAMP(3),
    ADD COLUMN IF NOT EXISTS "models" TEXT[] DEFAULT ARRAY[]::TEXT[],
    ADD COLUMN IF NOT EXISTS "aliases" JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "config" JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "user_id" TEXT,
    ADD COLUMN IF NOT EXISTS "team_id" TEXT,
    ADD COLUMN IF NOT EXISTS "permissions" JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "max_parallel_requests" INTEGER,
    ADD COLUMN IF NOT EXISTS "metadata" JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "blocked" BOOLEAN,
    ADD COLUMN IF NOT EXISTS "tpm_limit" BIGINT,
    ADD COLUMN IF NOT EXISTS "rpm_limit" BIGINT,
    ADD COLUMN IF NOT EXISTS "max_budget" DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS "budget_duration" TEXT,
    ADD COLUMN IF NOT EXISTS "budget_reset_at" TIMESTAMP(3),
    ADD COLUMN IF NOT EXISTS "allowed_cache_controls" TEXT[] DEFAULT ARRAY[]::TEXT[],
    ADD COLUMN IF NOT EXISTS "allowed_routes" TEXT[] DEFAULT ARRAY[]::TEXT[],
    ADD COLUMN IF NOT EXISTS "model_spend" JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "model_max_budget" JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "budget_id" TEXT,
    ADD COLUMN IF NOT EXISTS "organization_id" TEXT,
    ADD COLUMN IF NOT EXISTS "object_permission_id" TEXT,
    ADD COLUMN IF NOT EXISTS "created_at" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP,
    ADD COLUMN IF NOT EXISTS "created_by" TEXT,
    ADD COLUMN IF NOT EXISTS "updated_at" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP,
    ADD COLUMN IF NOT EXISTS "updated_by" TEXT,
    ADD COLUMN IF NOT EXISTS "last_active" TIMESTAMP(3),
    ADD COLUMN IF NOT EXISTS "rotation_count" INTEGER DEFAULT 0,
    ADD COLUMN IF NOT EXISTS "auto_rotate" BOOLEAN DEFAULT false,
    ADD COLUMN IF NOT EXISTS "rotation_interval" TEXT,
    ADD COLUMN IF NOT EXISTS "last_rotation_at" TIMESTAMP(3),
    ADD COLUMN IF NOT EXISTS "key_rotation_at" TIMESTAMP(3);
CREATE INDEX IF NOT EXISTS "LiteLLM_VerificationToken_user_id_team_id_idx"
    ON "LiteLLM_VerificationToken" ("user_id", "team_id");
CREATE INDEX IF NOT EXISTS "LiteLLM_VerificationToken_team_id_idx"
    ON "LiteLLM_VerificationToken" ("team_id");
CREATE INDEX IF NOT EXISTS "LiteLLM_VerificationToken_budget_reset_at_expires_idx"
    ON "LiteLLM_VerificationToken" ("budget_reset_at", "expires");

CREATE TABLE IF NOT EXISTS "LiteLLM_UserTable" (
    "user_id" TEXT NOT NULL,
    CONSTRAINT "LiteLLM_UserTable_pkey" PRIMARY KEY ("user_id")
);
ALTER TABLE "LiteLLM_UserTable"
    ADD COLUMN IF NOT EXISTS "user_alias" TEXT,
    ADD COLUMN IF NOT EXISTS "team_id" TEXT,
    ADD COLUMN IF NOT EXISTS "sso_user_id" TEXT,
    ADD COLUMN IF NOT EXISTS "organization_id" TEXT,
    ADD COLUMN IF NOT EXISTS "object_permission_id" TEXT,
    ADD COLUMN IF NOT EXISTS "password" TEXT,
    ADD COLUMN IF NOT EXISTS "teams" TEXT[] DEFAULT ARRAY[]::TEXT[],
    ADD COLUMN IF NOT EXISTS "user_role" TEXT,
    ADD COLUMN IF NOT EXISTS "max_budget" DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS "spend" DOUBLE PRECISION NOT NULL DEFAULT 0.0,
    ADD COLUMN IF NOT EXISTS "user_email" TEXT,
    ADD COLUMN IF NOT EXISTS "models" TEXT[] DEFAULT ARRAY[]::TEXT[],
    ADD COLUMN IF NOT EXISTS "metadata" JSONB DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "max_parallel_requests" INTEGER,
    ADD COLUMN IF NOT EXISTS "tpm_limit" BIGINT,
    ADD COLUMN IF NOT EXISTS "rpm_limit" BIGINT,
    ADD COLUMN IF NOT EXISTS "budget_duration" TEXT,
    ADD COLUMN IF NOT EXISTS "budget_reset_at" TIMESTAMP(3),
    ADD COLUMN IF NOT EXISTS "allowed_cache_controls" TEXT[] DEFAULT ARRAY[]::TEXT[],
    ADD COLUMN IF NOT EXISTS "model_spend" JSONB DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "model_max_budget" JSONB DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "created_at" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP,
    ADD COLUMN IF NOT EXISTS "updated_at" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP;

CREATE TABLE IF NOT EXISTS "LiteLLM_TeamTable" (
    "team_id" TEXT NOT NULL,
    CONSTRAINT "LiteLLM_TeamTable_pkey" PRIMARY KEY ("team_id")
);
ALTER TABLE "LiteLLM_TeamTable"
    ADD COLUMN IF NOT EXISTS "team_alias" TEXT,
    ADD COLUMN IF NOT EXISTS "organization_id" TEXT,
    ADD COLUMN IF NOT EXISTS "object_permission_id" TEXT,
    ADD COLUMN IF NOT EXISTS "admins" TEXT[] DEFAULT ARRAY[]::TEXT[],
    ADD COLUMN IF NOT EXISTS "members" TEXT[] DEFAULT ARRAY[]::TEXT[],
    ADD COLUMN IF NOT EXISTS "members_with_roles" JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "metadata" JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "max_budget" DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS "spend" DOUBLE PRECISION NOT NULL DEFAULT 0.0,
    ADD COLUMN IF NOT EXISTS "models" TEXT[] DEFAULT ARRAY[]::TEXT[],
    ADD COLUMN IF NOT EXISTS "max_parallel_requests" INTEGER,
    ADD COLUMN IF NOT EXISTS "tpm_limit" BIGINT,
    ADD COLUMN IF NOT EXISTS "rpm_limit" BIGINT,
    ADD COLUMN IF NOT EXISTS "budget_duration" TEXT,
    ADD COLUMN IF NOT EXISTS "budget_reset_at" TIMESTAMP(3),
    ADD COLUMN IF NOT EXISTS "blocked" BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ADD COLUMN IF NOT EXISTS "updated_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ADD COLUMN IF NOT EXISTS "model_spend" JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "model_max_budget" JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "team_member_permissions" TEXT[] DEFAULT ARRAY[]::TEXT[];

--  One row per request. request_id is the gateway's own call id, never the
--  provider's response id (LiteLLM's rows collide on those, issue #28376),
--  so a replayed record finds its row and is not counted twice.
CREATE TABLE IF NOT EXISTS "LiteLLM_SpendLogs" (
    "request_id" TEXT NOT NULL,
    CONSTRAINT "LiteLLM_SpendLogs_pkey" PRIMARY KEY ("request_id")
);
ALTER TABLE "LiteLLM_SpendLogs"
    ADD COLUMN IF NOT EXISTS "call_type" TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS "api_key" TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS "spend" DOUBLE PRECISION NOT NULL DEFAULT 0.0,
    ADD COLUMN IF NOT EXISTS "total_tokens" INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS "prompt_tokens" INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS "completion_tokens" INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS "startTime" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ADD COLUMN IF NOT EXISTS "endTime" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ADD COLUMN IF NOT EXISTS "request_duration_ms" INTEGER,
    ADD COLUMN IF NOT EXISTS "completionStartTime" TIMESTAMP(3),
    ADD COLUMN IF NOT EXISTS "model" TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS "model_id" TEXT DEFAULT '',
    ADD COLUMN IF NOT EXISTS "model_group" TEXT DEFAULT '',
    ADD COLUMN IF NOT EXISTS "custom_llm_provider" TEXT DEFAULT '',
    ADD COLUMN IF NOT EXISTS "api_base" TEXT DEFAULT '',
    ADD COLUMN IF NOT EXISTS "user" TEXT DEFAULT '',
    ADD COLUMN IF NOT EXISTS "metadata" JSONB DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "cache_hit" TEXT DEFAULT '',
    ADD COLUMN IF NOT EXISTS "cache_key" TEXT DEFAULT '',
    ADD COLUMN IF NOT EXISTS "request_tags" JSONB DEFAULT '[]',
    ADD COLUMN IF NOT EXISTS "team_id" TEXT,
    ADD COLUMN IF NOT EXISTS "organization_id" TEXT,
    ADD COLUMN IF NOT EXISTS "end_user" TEXT,
    ADD COLUMN IF NOT EXISTS "requester_ip_address" TEXT,
    ADD COLUMN IF NOT EXISTS "messages" JSONB DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "response" JSONB DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "proxy_server_request" JSONB DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "session_id" TEXT,
    ADD COLUMN IF NOT EXISTS "status" TEXT,
    ADD COLUMN IF NOT EXISTS "mcp_namespaced_tool_name" TEXT,
    ADD COLUMN IF NOT EXISTS "agent_id" TEXT;
CREATE INDEX IF NOT EXISTS "LiteLLM_SpendLogs_startTime_idx"
    ON "LiteLLM_SpendLogs" ("startTime");
CREATE INDEX IF NOT EXISTS "LiteLLM_SpendLogs_startTime_request_id_idx"
    ON "LiteLLM_SpendLogs" ("startTime", "request_id");
CREATE INDEX IF NOT EXISTS "LiteLLM_SpendLogs_end_user_idx"
    ON "LiteLLM_SpendLogs" ("end_user");
CREATE INDEX IF NOT EXISTS "LiteLLM_SpendLogs_session_id_idx"
    ON "LiteLLM_SpendLogs" ("session_id");

--  One row per failed attempt (unless disable_error_logs)
CREATE TABLE IF NOT EXISTS "LiteLLM_ErrorLogs" (
    "request_id" TEXT NOT NULL,
    CONSTRAINT "LiteLLM_ErrorLogs_pkey" PRIMARY KEY ("request_id")
);
ALTER TABLE "LiteLLM_ErrorLogs"
    ADD COLUMN IF NOT EXISTS "startTime" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ADD COLUMN IF NOT EXISTS "endTime" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ADD COLUMN IF NOT EXISTS "api_base" TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS "model_group" TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS "litellm_model_name" TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS "model_id" TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS "request_kwargs" JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "exception_type" TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS "exception_string" TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS "status_code" TEXT NOT NULL DEFAULT '';

--  Deployments kept in the database (store_model_in_db). Secrets inside
--  litellm_params are stored encrypted with the salt key. A table LiteLLM
--  created has no default for created_by/updated_by: writers always set them.
CREATE TABLE IF NOT EXISTS "LiteLLM_ProxyModelTable" (
    "model_id" TEXT NOT NULL,
    CONSTRAINT "LiteLLM_ProxyModelTable_pkey" PRIMARY KEY ("model_id")
);
ALTER TABLE "LiteLLM_ProxyModelTable"
    ADD COLUMN IF NOT EXISTS "model_name" TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS "litellm_params" JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS "model_info" JSONB,
    ADD COLUMN IF NOT EXISTS "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ADD COLUMN IF NOT EXISTS "created_by" TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS "updated_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ADD COLUMN IF NOT EXISTS "updated_by" TEXT NOT NULL DEFAULT '';
