// config.h - typed run configuration: INI files + "--set section.key=value".
//
// Every key lives in one registry (config.c, CONFIG_KEYS[]) with its type,
// default, allowed range and a one-line doc; adding a key is one table line.
// Keys are addressed as "section.key"; in an INI file that is
//
//     [train]
//     lr = 3e-4        ; comments start with ';' or '#'
//
// (a full "train.lr = 3e-4" line outside any section works too). Sources are
// applied in order, later wins: defaults, --config FILE, --set k=v, ...
// Bad input (unknown key, bad value, unreadable file) is a one-line fatal
// error naming the origin (file:line or --set), the key, and, for an unknown
// key, the nearest registered one. Asking the getters for an unregistered key
// or for the wrong type is a bug in rlhfd and aborts.
#pragma once
#include <stdio.h>
#include <jansson.h>

typedef enum { CONFIG_INT, CONFIG_FLOAT, CONFIG_STR, CONFIG_BOOL } ConfigType;

// One registered key. min/max bound INT and FLOAT values (inclusive).
typedef struct {
    const char* key;     // "section.name"
    ConfigType type;
    const char* def;     // default, as it would be written in a file
    double min, max;
    const char* doc;     // one line
} ConfigKey;

typedef struct Config Config;

// A config holding every registered key at its default.
Config* config_new(void);
void config_free(Config* cfg);

// Applies an INI file. Fatal (one line, exit 1) on an unreadable file, a
// syntax error, an unknown key or a bad value, naming path:line.
void config_load_file(Config* cfg, const char* path);
// Applies one "section.key=value" assignment; origin names it in errors
// (e.g. "--set"). Fatal on a malformed assignment, unknown key, bad value.
void config_set(Config* cfg, const char* assignment, const char* origin);
// Same with key and value apart (for values taken from elsewhere, e.g. a
// loaded model's shape). Fatal on unknown key or bad value.
void config_set_value(Config* cfg, const char* key, const char* value, const char* origin);

// Typed getters. Abort on an unregistered key or a type mismatch (a bug).
int config_int(const Config* cfg, const char* key);
float config_float(const Config* cfg, const char* key);
double config_double(const Config* cfg, const char* key);
const char* config_str(const Config* cfg, const char* key);
int config_bool(const Config* cfg, const char* key);
// 1 when the key was given by a file or an assignment (not the default).
int config_is_set(const Config* cfg, const char* key);
// Where the current value came from: "default", "tiny.ini:7", "--set", ...
const char* config_origin(const Config* cfg, const char* key);

// All keys, {"train.lr": 0.0003, ...}, typed; new reference.
json_t* config_to_json(const Config* cfg);
// The effective config as an INI file, each value annotated with its origin.
void config_print(const Config* cfg, FILE* f);
// The registry: every key with its type, default and doc (for --help-config).
void config_print_help(FILE* f);

// The registry itself (tests, tools). *n receives the number of keys.
const ConfigKey* config_keys(int* n);
// The registered key nearest to `key` (Levenshtein distance on the full
// name, falling back to the name after the dot); never NULL.
const char* config_nearest_key(const char* key);
