"""Every command-line entry point, and the only place argparse and the LightningCLI live: `commands` (the
`pgi-detect` dispatcher and its one-line errors), `main` (the LightningCLI behind fit/validate/test/predict),
`detect`, `export`, `check_data` (the tools), `options` (flags they share). The library packages below never parse
a command line."""
