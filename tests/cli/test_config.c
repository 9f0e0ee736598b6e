// test_config.c - the config registry, INI loading, overrides and "did you
// mean". Error paths (which exit) are covered by test_cli.py through rlhfd.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "common/config.h"

static int failures = 0;
#define EXPECT(cond) do { if (!(cond)) { \
    fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); failures++; } } while (0)

static void test_defaults(void) {
    Config* c = config_new();
    EXPECT(config_int(c, "model.vocab") == 50257);
    EXPECT(config_int(c, "train.seq") == 0);
    EXPECT(fabsf(config_float(c, "train.lr") - 6e-4f) < 1e-9f);
    EXPECT(!strcmp(config_str(c, "data.val"), ""));
    EXPECT(!config_is_set(c, "train.lr"));
    EXPECT(!strcmp(config_origin(c, "train.lr"), "default"));
    config_free(c);
}

// Every registered key: "section.name", a known type, a valid default, a doc.
static void test_registry(void) {
    int n = 0;
    const ConfigKey* keys = config_keys(&n);
    EXPECT(n >= 27);
    for (int i = 0; i < n; i++) {
        const char* dot = strchr(keys[i].key, '.');
        EXPECT(dot && dot != keys[i].key && dot[1] && !strchr(dot + 1, '.'));
        EXPECT(keys[i].doc && keys[i].doc[0]);
        for (int j = 0; j < i; j++) EXPECT(strcmp(keys[i].key, keys[j].key) != 0);
    }
    // a registered key is its own nearest key
    for (int i = 0; i < n; i++) EXPECT(!strcmp(config_nearest_key(keys[i].key), keys[i].key));
}

static void test_file_and_overrides(void) {
    char path[] = "/tmp/rlhfd_test_config_XXXXXX";
    int fd = mkstemp(path);
    EXPECT(fd >= 0);
    FILE* f = fdopen(fd, "w");
    fputs("train.batch = 7\n; comment\n# another\n[train]\nlr = 1e-3   ; inline comment\nsteps=42\n"
          "[data]\ntrain = a.bin, b.bin\n[model]\nlayers = 3\nlayers = 5\n", f);
    fclose(f);
    Config* c = config_new();
    config_load_file(c, path);
    EXPECT(fabs(config_double(c, "train.lr") - 1e-3) < 1e-15);
    EXPECT(config_int(c, "train.steps") == 42);
    EXPECT(config_int(c, "model.layers") == 5); // later line wins
    EXPECT(!strcmp(config_str(c, "data.train"), "a.bin, b.bin"));
    EXPECT(config_is_set(c, "train.steps"));
    char want[512];
    snprintf(want, sizeof want, "%s:6", path);
    EXPECT(!strcmp(config_origin(c, "train.steps"), want));
    EXPECT(config_int(c, "train.batch") == 7); // a full key before any section
    config_set(c, "train.steps=7", "--set");
    config_set(c, "train.steps = 9", "--set");
    EXPECT(config_int(c, "train.steps") == 9);
    EXPECT(!strcmp(config_origin(c, "train.steps"), "--set"));
    config_set_value(c, "run.dir", "somewhere", "test");
    EXPECT(!strcmp(config_str(c, "run.dir"), "somewhere"));

    json_t* j = config_to_json(c);
    int n = 0;
    config_keys(&n);
    EXPECT((int)json_object_size(j) == n);
    EXPECT(json_integer_value(json_object_get(j, "train.steps")) == 9);
    EXPECT(fabs(json_real_value(json_object_get(j, "train.lr")) - 1e-3) < 1e-15);
    EXPECT(!strcmp(json_string_value(json_object_get(j, "run.dir")), "somewhere"));
    json_decref(j);
    config_free(c);
    unlink(path);
}

static void test_nearest(void) {
    EXPECT(!strcmp(config_nearest_key("train.lerning_rate"), "train.lr"));
    EXPECT(!strcmp(config_nearest_key("train.learning_rate"), "train.lr"));
    EXPECT(!strcmp(config_nearest_key("trian.lr"), "train.lr"));
    EXPECT(!strcmp(config_nearest_key("lr"), "train.lr"));
    EXPECT(!strcmp(config_nearest_key("train.warmpu"), "train.warmup"));
    EXPECT(!strcmp(config_nearest_key("model.n_layer"), "model.layers"));
    EXPECT(!strcmp(config_nearest_key("model.n_embd"), "model.embd"));
    EXPECT(!strcmp(config_nearest_key("train.batch_size"), "train.batch"));
    EXPECT(!strcmp(config_nearest_key("data.vla"), "data.val"));
}

int main(void) {
    test_defaults();
    test_registry();
    test_file_and_overrides();
    test_nearest();
    if (failures) {
        fprintf(stderr, "test_config: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_config: ok\n");
    return 0;
}
