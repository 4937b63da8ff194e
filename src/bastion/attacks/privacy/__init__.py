"""Privacy attacks (THREATS.md §4): membership inference (LOSS, shadow models, LiRA, RMIA, label-only), model
inversion, attribute inference and a one-run DP audit."""
