// args.h - tiny command-line option parser shared by the subcommands.
//
// Options are "--name value" or "--name=value"; flags are "--name".
// Usage errors print one line ("rlhfd CMD: ...") and exit 2.
#pragma once
#include <stdint.h>

typedef enum { ARG_FLAG, ARG_STR, ARG_INT, ARG_FLOAT, ARG_U64, ARG_MULTI } ArgKind;

typedef struct {
    const char* name;   // without the leading "--"
    ArgKind kind;
    void* dest;         // int* (FLAG/INT), const char** (STR), float*, uint64_t*;
                        // MULTI: ArgList* (repeatable string option)
    const char* help;   // one line; "VALUE: text" shows VALUE as the metavar
} ArgSpec;

typedef struct {
    const char* items[64];
    int n;
} ArgList;

// Parses argv[1..] (argv[0] is the command name). "--help"/"-h" prints
// usage (synopsis + each option's help) to stdout and exits 0.
// Positional arguments are not accepted.
void args_parse(const char* cmd, const char* synopsis, const ArgSpec* specs, int nspecs,
                int argc, char** argv);
// Usage error: "rlhfd CMD: <message>" and exit 2.
__attribute__((noreturn, format(printf, 2, 3)))
void args_fail(const char* cmd, const char* fmt, ...);
