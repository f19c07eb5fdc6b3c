// apps/subliminal/sweep.h — ablation sweeps: --sweep key=v1,v2,... (repeat for a grid).
//
// Each configuration of the grid runs the whole experiment (with all its --models) and adds
// one row per arm to PREFIX.csv and PREFIX.jsonl as soon as it finishes: mean test accuracy,
// 95% CI, std, n. Rerunning the same command resumes: configurations whose rows are already
// in PREFIX.jsonl are skipped.
#pragma once

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "apps/subliminal/config.h"
#include "data/mnist.h"
#include "engine/device.h"

namespace subliminal::app {

// The grid of a config's --sweep flags: each entry is one configuration's (key, value) list.
// Throws UsageError for malformed --sweep text or values a key does not accept.
std::vector<std::vector<std::pair<std::string, std::string>>> sweep_grid(const Config& base);

// Each configuration of the grid as a full Config, in grid order, every one checked (flag rules,
// --load-init shape), so that a bad combination is found before the first run, not halfway.
// Throws UsageError naming the configuration.
std::vector<Config> sweep_configs(const Config& base);

// "lr=0.0003;batch-size=256": identifies a configuration's rows (used for resuming).
std::string config_id(const std::vector<std::pair<std::string, std::string>>& settings);

// Refuses, up front, a PREFIX.lock that a sweep may not take over and remove when it ends: one
// that is not a sweep's lock (someone's own file under that name, a link, a FIFO). Throws
// UsageError naming --sweep-out and the file; a missing PREFIX.lock is fine.
void check_sweep_lock(const std::string& prefix);

int run_sweep(const Config& base, const data::Mnist& mnist, Device device, std::FILE* out);

}  // namespace subliminal::app
