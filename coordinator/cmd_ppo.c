// cmd_ppo.c - `rlhfd ppo`: PPO fine-tuning of a policy against a reward
// (InstructGPT / trlx recipe). The trainer is coordinator/ppo_core.c, shared
// with `rlhfd nlpo` (PPO with a masked action space).
#include "commands.h"
#include "ppo_core.h"

#define CMD "ppo"

static const char* const SYNOPSIS =
    "--model SFT [--config FILE] [--set KEY=VALUE]... [--overwrite]\n"
    "\n"
    "PPO (InstructGPT, trlx): the policy and a frozen reference start from --model;\n"
    "every iteration samples rl.batch responses, scores them with rl.reward, and takes\n"
    "ppo.epochs passes of clipped-surrogate updates with a KL penalty (rl.kl_coef,\n"
    "adaptive with rl.kl_adaptive) toward the reference. Writes run.dir/metrics.jsonl,\n"
    "a checkpoint, and a JSON summary (held-out gold, reward, kl) as the last stdout line.\n"
    "Example: rlhfd ppo --config deploy/configs/ppo.ini --model runs/sft --set rl.reward=rm:runs/rm\n"
    "Keys: rlhfd ppo --help-config (sections rl, ppo, train).";

int cmd_ppo(int argc, char** argv) { return ppo_main(CMD, SYNOPSIS, argc, argv, NULL); }
