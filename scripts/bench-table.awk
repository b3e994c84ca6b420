# Used by scripts/bench.
# Turns target/bench-results.txt into a markdown table: criterion estimates as
# "median [low, high]" (and throughput), the other benches' own lines as printed (they print
# their own ratios, such as the ML examples' wasm to native).
BEGIN { print "| bench | case | figure |"; print "|---|---|---|" }
/^# / { next }
/^## / { bench = substr($0, 4); name = ""; next }
/^(Compiling|Finished|Running|Benchmarking)/ || /^ *(Compiling|Finished|Running)/ { next }
/^[a-z_]+\/[^ ]*/ && $0 !~ /:/ { name = $1; next }
/^[a-z_]+\/[^ ]* +time:/ { name = $1 }
/time: +\[[0-9]/ && name != "" {
    line = $0; sub(/.*time: +\[/, "", line); sub(/\].*/, "", line); split(line, t, " ")
    fig[name] = t[3] " " t[4] " [" t[1] " " t[2] ", " t[5] " " t[6] "]"; order[++n] = bench "\t" name
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
