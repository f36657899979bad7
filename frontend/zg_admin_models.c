/*  =========================================================================
    zg_admin_models - /model/new, /model/update, /model/delete and the
    database side of /model/info

    Not in this build yet: every op answers 501 in the reference's error
    shape, so that the routes exist and say so.
    =========================================================================
*/
#include "frontend/zg_admin.h"

#include <assert.h>

void
zg_admin_models_run (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    assert (ctx);
    assert (job);
    zg_admin_error (job, 501, "not_implemented_error", NULL,
                    "%s is not implemented in this build", zg_admin_op_name (job->op));
}
