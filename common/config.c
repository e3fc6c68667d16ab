/* Option table parsing: command line over environment over defaults. */
#include "common/config.h"

#include "common/log.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int find_opt(const kvt_opt_t *opts, int n, const char *name, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
            return i;
    return -1;
}

kvt_status_t kvt_config_parse_size(const char *text, uint64_t *bytes_p)
{
    if (!text || !isdigit((unsigned char)text[0]))
        return KVT_ERR_INVALID;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno)
        return KVT_ERR_INVALID;
    unsigned shift = 0;
    switch (toupper((unsigned char)*end)) {
    case '\0': break;
    case 'K': shift = 10; break;
    case 'M': shift = 20; break;
    case 'G': shift = 30; break;
    case 'T': shift = 40; break;
    default: return KVT_ERR_INVALID;
    }
    if (*end) {
        end++;
        if (*end == 'i' || *end == 'I')
            end++;
        if (*end == 'B' || *end == 'b')
            end++;
        if (*end)
            return KVT_ERR_INVALID;
    }
    if (shift && v > (UINT64_MAX >> shift))
        return KVT_ERR_INVALID;
    *bytes_p = (uint64_t)v << shift;
    return KVT_OK;
}

static kvt_status_t check_value(const kvt_opt_t *opt, const char *value, const char *from)
{
    uint64_t v;
    kvt_status_t st = KVT_OK;
    switch (opt->type) {
    case KVT_OPT_STR: break;
    case KVT_OPT_U64: {
        char *end = NULL;
        errno = 0;
        if (!isdigit((unsigned char)value[0]))
            st = KVT_ERR_USAGE;
        else
            (void)strtoull(value, &end, 10);
        if (st == KVT_OK && (errno || *end))
            st = KVT_ERR_USAGE;
        break;
    }
    case KVT_OPT_SIZE:
        if (kvt_config_parse_size(value, &v) != KVT_OK)
            st = KVT_ERR_USAGE;
        break;
    case KVT_OPT_F64: {
        char *end = NULL;
        errno = 0;
        double d = strtod(value, &end);
        if (errno || end == value || *end || !isfinite(d))
            st = KVT_ERR_USAGE;
        break;
    }
    case KVT_OPT_BOOL:
        if (strcmp(value, "1") && strcmp(value, "0") && strcmp(value, "true") &&
            strcmp(value, "false") && strcmp(value, "yes") && strcmp(value, "no"))
            st = KVT_ERR_USAGE;
        break;
    }
    if (st != KVT_OK)
        kvt_log_error("bad option value option=%s value=\"%s\" from=%s", opt->name, value, from);
    return st;
}

static void env_name(const char *name, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "KVT_%s", name);
    for (size_t i = 4; i < n && i < cap; i++)
        out[i] = out[i] == '-' ? '_' : (char)toupper((unsigned char)out[i]);
}

static kvt_status_t apply_env_and_defaults(kvt_config_t *cfg, const bool *given)
{
    for (int i = 0; i < cfg->n_opts; i++) {
        if (given[i])
            continue;
        char env[96];
        env_name(cfg->opts[i].name, env, sizeof(env));
        const char *v = getenv(env);
        if (v && *v) {
            if (check_value(&cfg->opts[i], v, "env") != KVT_OK)
                return KVT_ERR_USAGE;
            cfg->values[i] = v;
        } else {
            cfg->values[i] = cfg->opts[i].default_value;
        }
    }
    return KVT_OK;
}

kvt_status_t kvt_config_parse(kvt_config_t *cfg, const kvt_opt_t *opts, int n_opts,
                              int argc, char **argv)
{
    bool given[KVT_CONFIG_MAX_OPTS] = {false};
    memset(cfg, 0, sizeof(*cfg));
    if (n_opts > KVT_CONFIG_MAX_OPTS)
        return KVT_ERR_INVALID;
    cfg->opts = opts;
    cfg->n_opts = n_opts;
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            cfg->help = true;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0) {
            if (cfg->n_positional == KVT_CONFIG_MAX_POSITIONAL) {
                kvt_log_error("too many arguments arg=\"%s\"", arg);
                return KVT_ERR_USAGE;
            }
            cfg->positional[cfg->n_positional++] = arg;
            continue;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        int i = find_opt(opts, n_opts, name, len);
        if (i < 0) {
            kvt_log_error("unknown option option=--%.*s", (int)len, name);
            return KVT_ERR_USAGE;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (!value && opts[i].type == KVT_OPT_BOOL)
            value = "1";
        if (!value) {
            if (a + 1 >= argc) {
                kvt_log_error("option needs a value option=--%s", opts[i].name);
                return KVT_ERR_USAGE;
            }
            value = argv[++a];
        }
        if (check_value(&opts[i], value, "command line") != KVT_OK)
            return KVT_ERR_USAGE;
        cfg->values[i] = value;
        given[i] = true;
    }
    return apply_env_and_defaults(cfg, given);
}

const char *kvt_config_str(const kvt_config_t *cfg, const char *name)
{
    int i = find_opt(cfg->opts, cfg->n_opts, name, strlen(name));
    return i < 0 ? NULL : cfg->values[i];
}

uint64_t kvt_config_u64(const kvt_config_t *cfg, const char *name, uint64_t fallback)
{
    const char *v = kvt_config_str(cfg, name);
    uint64_t out;
    if (!v || kvt_config_parse_size(v, &out) != KVT_OK)
        return fallback;
    return out;
}

double kvt_config_f64(const kvt_config_t *cfg, const char *name, double fallback)
{
    const char *v = kvt_config_str(cfg, name);
    if (!v)
        return fallback;
    char *end = NULL;
    double d = strtod(v, &end);
    return (end == v || *end || !isfinite(d)) ? fallback : d;
}

bool kvt_config_bool(const kvt_config_t *cfg, const char *name)
{
    const char *v = kvt_config_str(cfg, name);
    return v && (strcmp(v, "1") == 0 || strcmp(v, "true") == 0 || strcmp(v, "yes") == 0);
}

void kvt_config_usage(FILE *out, const kvt_opt_t *opts, int n_opts)
{
    for (int i = 0; i < n_opts; i++) {
        const char *arg = opts[i].type == KVT_OPT_BOOL ? "" :
                          opts[i].type == KVT_OPT_STR ? " VALUE" : " N";
        char left[64];
        snprintf(left, sizeof(left), "--%s%s", opts[i].name, arg);
        fprintf(out, "  %-26s %s", left, opts[i].help);
        if (opts[i].default_value)
            fprintf(out, " (default: %s)", opts[i].default_value);
        fputc('\n', out);
    }
}
