"""The LVLM judge: protocol (prompts, reply parsing), cache, client and the loopback ground-truth server."""
