#!/usr/bin/env bash
# facemark's detector settings, one at a time from the defaults (--min-face 40, --step 4,
# --pyramid-scale 0.8, --score-threshold 2): recall and median ms per photo on the 300-W test
# crops and dlib's testing.xml, on one thread (RAYON_NUM_THREADS=1) so the time is the work.
# Not run in CI. Usage: sweep.sh [FACEMARK_BINARY] [DATA_DIR]
set -euo pipefail
bin=${1:-/root/facemark-detect-bin}
data=${2:-${FACEMARK_DATA:-../../../shared/data}}
sets=("$data/ibug_300w/labels_300w_test.xml" "$data/dlib_example_faces/testing.xml")
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| setting | 300-W test found | unmatched | ms / crop | testing.xml found | ms / photo |"
echo "|---|---|---|---|---|---|"
for setting in "" "--min-face 36" "--min-face 44" "--min-face 48" "--step 2" "--step 3" \
    "--step 5" "--pyramid-scale 0.75" "--pyramid-scale 0.85" "--score-threshold 1" \
    "--score-threshold 1.5" "--score-threshold 3"; do
    row="| ${setting:-defaults} |"
    for labels in "${sets[@]}"; do
        # shellcheck disable=SC2086
        json=$(CI=1 RAYON_NUM_THREADS=1 "$bin" detect --labels "$labels" $setting)
        read -r found count unmatched ms < <(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["detected"], r["count"], r["unmatched_detections"], round(r["median_detection_ms"], 1))' "$json")
        if [[ $labels == *300w* ]]; then
            row+=" $found / $count | $unmatched | $ms |"
        else
            row+=" $found / $count | $ms |"
        fi
    done
    echo "$row"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
