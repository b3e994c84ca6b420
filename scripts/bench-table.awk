# Used by scripts/bench.
# Turns target/bench-results.txt into a markdown table: criterion estimates as
# "median [low, high]" (and throughput), the end-to-end benches' own lines as printed. An ML
# example's wasm variants also get their ratio to its native build (the alternative), and
# the end-to-end benches print their own ratios.
function seconds(value, unit) {
    return value * (unit == "s" ? 1 : unit == "ms" ? 1e-3 : unit == "ns" ? 1e-9 : 1e-6)
}
BEGIN { print "| bench | case | figure |"; print "|---|---|---|" }
/^# / { next }
/^## / { bench = substr($0, 4); name = ""; next }
/^(Compiling|Finished|Running|Benchmarking)/ || /^ *(Compiling|Finished|Running)/ { next }
/^[a-z_]+\/[^ ]*/ && $0 !~ /:/ { name = $1; next }
/^[a-z_]+\/[^ ]* +time:/ { name = $1 }
/time: +\[[0-9]/ && name != "" {
    line = $0; sub(/.*time: +\[/, "", line); sub(/\].*/, "", line); split(line, t, " ")
    fig[name] = t[3] " " t[4] " [" t[1] " " t[2] ", " t[5] " " t[6] "]"; order[++n] = bench "\t" name
    if (name ~ /^ml\/[^\/]+\//) {
        split(name, part, "/"); median = seconds(t[3], t[4])
        if (part[3] == "native") native[part[2]] = median
        else if (native[part[2]] > 0) fig[name] = fig[name] sprintf(" (%.2fx native)", median / native[part[2]])
    }
    next
}
/thrpt: +\[[0-9]/ && name != "" {
    line = $0; sub(/.*thrpt: +\[/, "", line); sub(/\].*/, "", line); split(line, t, " ")
    fig[name] = fig[name] "; " t[3] " " t[4]; next
}
/time:|thrpt:|change:|Performance|No change|within noise|^ *[0-9]+ \([0-9.]+%\)/ { next }
bench != "" && NF > 0 { gsub(/\|/, "/"); gsub(/^ +/, ""); order[++n] = bench "\t" "\t" $0 }
END {
    for (i = 1; i <= n; i++) {
        split(order[i], p, "\t")
        if (p[2] != "") print "| " p[1] " | `" p[2] "` | " fig[p[2]] " |"
        else print "| " p[1] " | | " p[3] " |"
    }
}
