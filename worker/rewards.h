// rewards.h - any reward source behind one call (the RL stages use it).
//
// A spec names the source:
//   lexicon:FILE    AFINN labels.json ({word: score}) or VADER vader_lexicon.txt
//                   (its mean column); the reward of a response is AFINN's
//                   "comparative": sum of its word scores / number of words,
//                   words = lowercased [a-z']+ runs (worker/labelers.h). The
//                   prompt is not scored.
//   command:PROG [ARGS]
//                   an external program (run by /bin/sh -c, kept running across
//                   calls) speaking JSON Lines: one {"prompt","response"} line in,
//                   one {"reward": x} line out, in order. stderr is passed through.
//                   A crash, a bad reply or no reply for RLHFD_REWARD_TIMEOUT
//                   seconds (default 60) per batch is a one-line fatal error
//                   naming PROG.
//   rm:PATH         a reward model (worker/reward_model.h: rm_load +
//                   rm_score_texts with the GPT-2 tokenizer).
//   W1*SPEC1+W2*SPEC2...
//                   a weighted sum, e.g. "0.7*rm:runs/rm+0.3*lexicon:labels.json";
//                   a term without "W*" has weight 1. A '+' splits terms only
//                   where a new term (optional weight, then lexicon:, command:
//                   or rm:) follows it, so paths and arguments may contain '+'.
// A bad spec or an unreadable source is a one-line fatal error.
#pragma once
#include "../kernels/ops.h"

typedef struct RewardFn RewardFn;

RewardFn* reward_open(const char* spec, const Ops* ops);
// out (n) = reward of each (prompt, response).
void reward_score(RewardFn* f, const char* const* prompts, const char* const* responses, int n, float* out);
// The spec it was opened with.
const char* reward_name(const RewardFn* f);
void reward_close(RewardFn* f);
