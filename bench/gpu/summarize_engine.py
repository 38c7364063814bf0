"""Print one line per result of every ``plait bench engine`` JSON given (the rich table truncates columns in logs)."""

import json
import sys
from pathlib import Path

for path in sys.argv[1:]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        print(f"{path}: {error}")
        continue
    print(f"{path.rsplit('/', 1)[-1]}: {data['model']} prompt {data['prompt_len']} gen {data['gen_len']}")
    for r in data["results"]:
        fields = [f"{r['engine']:24s} b{r['batch']:<4d} prefill {r['prefill_tok_s']:10,.0f} tok/s"]
        fields.append(f"decode {r['decode_tok_s']:9,.0f} tok/s ({1e3 * r['decode_step_s']:.2f} ms/step)")
        for key, label in (("prefill_roofline_fraction", "prefill roof"), ("decode_roofline_fraction", "decode roof")):
            if key in r:
                fields.append(f"{label} {100 * r[key]:.1f}%")
        if "host_overhead_fraction" in r:
            device_ms = 1e3 * r["device_decode_step_s"]
            fields.append(f"host {100 * r['host_overhead_fraction']:.1f}% (device {device_ms:.2f} ms)")
        if r.get("decode_vs_hf"):
            fields.append(f"vs HF {r['decode_vs_hf']:.2f}x")
        print("  " + " | ".join(fields))
