// main.c - `rlhfd` entry point: dispatches to a subcommand.
#include <stdio.h>
#include <string.h>
#include "commands.h"
#include "../worker/comm.h"

typedef struct {
    const char* name;
    int (*run)(int argc, char** argv);
    const char* help;
} Command;

static const Command COMMANDS[] = {
    {"demo",     cmd_demo,     "the whole pipeline with shipped configs: pretrain -> SFT -> label -> RM -> RL"},
    {"pretrain", cmd_pretrain, "train a GPT on token shards (from scratch or --model)"},
    {"sft",      cmd_sft,      "supervised fine-tuning on {prompt, response} demonstrations"},
    {"label",    cmd_label,    "sample K responses per prompt and rank them with simulated labelers"},
    {"rm",       cmd_rm,       "train a reward model on rankings / preference pairs"},
    {"score",    cmd_score,    "score {prompt, response} records with a reward model"},
    {"ppo",      cmd_ppo,      "RL fine-tuning with PPO: value head, GAE, clipped losses, KL control"},
    {"pg",       cmd_pg,       "REINFORCE with a baseline and a classifier/RM reward"},
    {"grpo",     cmd_grpo,     "GRPO: group-relative advantages, no critic, KL in the loss"},
    {"rloo",     cmd_rloo,     "RLOO: leave-one-out baseline over G samples per prompt"},
    {"quark",    cmd_quark,    "Quark: reward-quantile control tokens + KL to the reference"},
    {"dpo",      cmd_dpo,      "DPO on preference pairs / rankings, with the reference model"},
    {"nlpo",     cmd_nlpo,     "NLPO: PPO within the top-p action set of a masking policy (RL4LMs)"},
    {"ilql",     cmd_ilql,     "ILQL: offline Q-learning heads on scored samples, decoding with Q - V (trlx)"},
    {"evaluate", cmd_evaluate, "held-out gold score, reward and KL of a policy's samples"},
    {"eval",     cmd_eval,     "mean next-token loss of a model on a token shard"},
    {"generate", cmd_generate, "sample text with the KV-cache decoder"},
    {"tokenize", cmd_tokenize, "GPT-2 BPE: text file -> llm.c token shard"},
    {"convert",  cmd_convert,  "convert checkpoints (native, Hugging Face, llm.c)"},
    {"bench",    cmd_bench,    "time training steps / generation"},
};
#define NUM_COMMANDS ((int)(sizeof COMMANDS / sizeof COMMANDS[0]))

static void usage(FILE* f) {
    fprintf(f, "usage: rlhfd COMMAND [options]   (rlhfd COMMAND --help for its options)\n\ncommands:\n");
    for (int i = 0; i < NUM_COMMANDS; i++) fprintf(f, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].help);
}

int main(int argc, char** argv) {
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (int i = 0; i < NUM_COMMANDS; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) {
            // Every rank runs the same command (SPMD); without mpirun this is a world of one.
            comm_mpi_init(&argc, &argv);
            int rc = COMMANDS[i].run(argc - 1, argv + 1);
            comm_mpi_finalize();
            return rc;
        }
    fprintf(stderr, "rlhfd: unknown command '%s' (see rlhfd --help)\n", argv[1]);
    return 2;
}
