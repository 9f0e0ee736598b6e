#include "args.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

void args_fail(const char* cmd, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "rlhfd %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see rlhfd %s --help)\n", cmd);
    va_end(ap);
    exit(2);
}

static void print_usage(const char* cmd, const char* synopsis, const ArgSpec* specs, int n) {
    printf("usage: rlhfd %s %s\n\noptions:\n", cmd, synopsis);
    for (int i = 0; i < n; i++) {
        const char* help = specs[i].help ? specs[i].help : "";
        const char* colon = strchr(help, ':');
        char meta[32] = "";
        if (specs[i].kind != ARG_FLAG) {
            if (colon && colon - help < 24) {
                snprintf(meta, sizeof meta, " %.*s", (int)(colon - help), help);
                help = colon + 1;
                while (*help == ' ') help++;
            } else {
                snprintf(meta, sizeof meta, " VALUE");
            }
        }
        char left[64];
        snprintf(left, sizeof left, "--%s%s", specs[i].name, meta);
        printf("  %-28s %s\n", left, help);
    }
    printf("  %-28s %s\n", "--help", "show this help");
}

static void set_value(const char* cmd, const ArgSpec* s, const char* v) {
    char* end = NULL;
    errno = 0;
    switch (s->kind) {
    case ARG_STR: *(const char**)s->dest = v; break;
    case ARG_INT: {
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < -2147483647L || x > 2147483647L)
            args_fail(cmd, "--%s expects an integer, got '%s'", s->name, v);
        *(int*)s->dest = (int)x;
        break;
    }
    case ARG_U64: {
        if (v[0] == '-') args_fail(cmd, "--%s expects a non-negative integer, got '%s'", s->name, v);
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || end == v || *end)
            args_fail(cmd, "--%s expects a non-negative integer, got '%s'", s->name, v);
        *(uint64_t*)s->dest = (uint64_t)x;
        break;
    }
    case ARG_FLOAT: {
        float x = strtof(v, &end);
        if (errno || end == v || *end) args_fail(cmd, "--%s expects a number, got '%s'", s->name, v);
        *(float*)s->dest = x;
        break;
    }
    case ARG_MULTI: {
        ArgList* l = (ArgList*)s->dest;
        if (l->n >= 64) args_fail(cmd, "too many --%s options", s->name);
        l->items[l->n++] = v;
        break;
    }
    case ARG_FLAG: break;
    }
}

void args_parse(const char* cmd, const char* synopsis, const ArgSpec* specs, int nspecs,
                int argc, char** argv) {
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            print_usage(cmd, synopsis, specs, nspecs);
            exit(0);
        }
        if (strncmp(a, "--", 2) != 0) args_fail(cmd, "unexpected argument '%s'", a);
        const char* name = a + 2;
        const char* eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const ArgSpec* s = NULL;
        for (int k = 0; k < nspecs; k++)
            if (strlen(specs[k].name) == nlen && !strncmp(specs[k].name, name, nlen)) s = &specs[k];
        if (!s) args_fail(cmd, "unknown option '--%.*s'", (int)nlen, name);
        if (s->kind == ARG_FLAG) {
            if (eq) args_fail(cmd, "--%s takes no value", s->name);
            *(int*)s->dest = 1;
            continue;
        }
        const char* v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) args_fail(cmd, "--%s needs a value", s->name);
        set_value(cmd, s, v);
    }
}
