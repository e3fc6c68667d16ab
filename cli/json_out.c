/* JSON output helpers for the CLI (see json_out.h). */
#include "cli/json_out.h"

#include "common/alloc.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/utf8.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

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

static const char *fs_name(long type)
{
    switch ((unsigned long)type) {
    case 0xEF53: return "ext4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x01021994: return "tmpfs";
    case 0x794C7630: return "overlayfs";
    case 0x6969: return "nfs";
    case 0x2FC12FC1: return "zfs";
    case 0xF2F52010: return "f2fs";
    case 0x65735546: return "fuse";
    default: return "unknown";
    }
}

cJSON *kvt_json_machine(const char *dir)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    char line[512], cpu[256] = "unknown", date[32];
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof(line), f)) {
        char *colon = strchr(line, ':');
        if (!strncmp(line, "model name", 10) && colon) {
            snprintf(cpu, sizeof(cpu), "%s", colon + 2);
            cpu[strcspn(cpu, "\n")] = '\0';
            break;
        }
    }
    if (f)
        fclose(f);
    struct utsname u;
    struct statfs sf;
    time_t now = time(NULL);
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    cJSON_AddStringToObject(o, "cpu", cpu);
    kvt_json_add_u64(o, "cores", (uint64_t)sysconf(_SC_NPROCESSORS_ONLN));
    kvt_json_add_u64(o, "mem_bytes",
                     (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE));
    if (uname(&u) == 0) {
        snprintf(line, sizeof(line), "%s %s", u.sysname, u.release);
        cJSON_AddStringToObject(o, "kernel", line);
    }
    cJSON_AddStringToObject(o, "filesystem", statfs(dir, &sf) == 0 ? fs_name(sf.f_type) : "unknown");
    cJSON_AddStringToObject(o, "date", date);
    return o;
}

bool kvt_json_add_bytes_as_text(cJSON *obj, const char *name, const char *bytes, size_t len)
{
    char *text = kvt_utf8_lossy(bytes, len);
    if (!text)
        return false;
    bool ok = cJSON_AddStringToObject(obj, name, text) != NULL;
    kvt_free(text);
    return ok;
}
