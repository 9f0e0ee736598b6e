// cmd_convert.c - `rlhfd convert`: any model the loader reads -> native
// checkpoint, Hugging Face directory or llm.c .bin.
#include <stdio.h>
#include <string.h>
#include <jansson.h>
#include "commands.h"
#include "../common/args.h"
#include "../kernels/ops.h"
#include "../worker/gpt.h"
#include "../worker/model_io.h"

int cmd_convert(int argc, char** argv) {
    const char* model_path = NULL;
    const char* out = NULL;
    const char* to = NULL;
    ArgSpec specs[] = {
        {"model", ARG_STR, &model_path, "PATH: native checkpoint dir, run dir, Hugging Face dir or "
                                        "model.safetensors, or llm.c .bin"},
        {"out", ARG_STR, &out, "PATH: output directory (native, hf) or file (llmc)"},
        {"to", ARG_STR, &to, "FORMAT: native | hf | llmc"},
    };
    args_parse("convert", "--model PATH --out PATH --to native|hf|llmc", specs,
               (int)(sizeof specs / sizeof specs[0]), argc, argv);
    if (!model_path) args_fail("convert", "--model is required");
    if (!out) args_fail("convert", "--out is required");
    if (!to) args_fail("convert", "--to is required");
    if (strcmp(to, "native") && strcmp(to, "hf") && strcmp(to, "llmc"))
        args_fail("convert", "--to must be native, hf or llmc, got '%s'", to);

    GPT model;
    json_t* state = NULL;
    model_load(&model, model_path, ops_cpu(), &state);
    if (!strcmp(to, "native")) {
        // keep the step and the caller's state of a native source
        json_t* step = json_object_get(state, "step");
        if (json_is_integer(step)) model.adam_step = (int)json_integer_value(step);
        json_t* inner = json_object_get(state, "state");
        checkpoint_save(&model, out, json_is_null(inner) ? NULL : inner, 0);
    } else if (!strcmp(to, "hf")) {
        model_export_hf(&model, out);
    } else {
        model_export_llmc(&model, out);
    }
    const GPTConfig* c = &model.config;
    printf("convert: %s -> %s (%s): L=%d C=%d NH=%d V=%d maxT=%d, %zu parameters\n", model_path, out,
           to, c->num_layers, c->channels, c->num_heads, c->vocab_size, c->max_seq_len,
           model.num_parameters);
    json_decref(state);
    gpt_free(&model);
    return 0;
}
