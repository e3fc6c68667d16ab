/* JSON output helpers for the CLI (see json_out.h). */
#include "cli/json_out.h"

#include "common/hash.h"
#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>

int kvt_json_print(cJSON *obj)
{
    if (!obj) {
        kvt_log_error("json output failed reason=\"out of memory\"");
        return 1;
    }
    char *text = cJSON_PrintUnformatted(obj);
    cJSON_Delete(obj);
    if (!text) {
        kvt_log_error("json output failed reason=\"out of memory\"");
        return 1;
    }
    int rc = (fputs(text, stdout) < 0 || fputc('\n', stdout) == EOF || fflush(stdout)) ? 1 : 0;
    cJSON_free(text);
    if (rc)
        kvt_log_error("json output failed reason=\"cannot write stdout\"");
    return rc;
}

void kvt_json_add_u64(cJSON *obj, const char *name, uint64_t value)
{
    cJSON_AddNumberToObject(obj, name, (double)value);
}

cJSON *kvt_json_identity(const kvt_block_identity_t *id)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    const kvt_block_layout_t *l = &id->layout;
    char fp[2 * KVT_FINGERPRINT_LEN + 1];
    kvt_hex(id->fingerprint, KVT_FINGERPRINT_LEN, fp);
    cJSON_AddStringToObject(o, "dtype", kvt_dtype_name(l->dtype));
    kvt_json_add_u64(o, "n_layers", l->n_layers);
    kvt_json_add_u64(o, "n_kv_heads", l->n_kv_heads);
    kvt_json_add_u64(o, "head_dim", l->head_dim);
    kvt_json_add_u64(o, "block_tokens", l->block_tokens);
    kvt_json_add_u64(o, "payload_bytes", kvt_block_layout_payload_bytes(l));
    cJSON_AddStringToObject(o, "fingerprint", fp);
    return o;
}

cJSON *kvt_json_tier_stats(const kvt_tier_stats_t *s, const char *state)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "state", state);
    kvt_json_add_u64(o, "blocks", s->blocks);
    kvt_json_add_u64(o, "bytes", s->bytes);
    kvt_json_add_u64(o, "capacity_bytes", s->capacity_bytes);
    kvt_json_add_u64(o, "hits", s->hits);
    kvt_json_add_u64(o, "misses", s->misses);
    kvt_json_add_u64(o, "puts", s->puts);
    kvt_json_add_u64(o, "evictions", s->evictions);
    kvt_json_add_u64(o, "corrupt", s->corrupt);
    kvt_json_add_u64(o, "no_parent", s->no_parent);
    kvt_json_add_u64(o, "pinned", s->pinned);
    return o;
}
