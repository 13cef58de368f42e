# The notify round-trip distribution from readyd-bench --plot-data: readyd against the
# bare relay against the client's own epoll. Left: the CDF; right: the tail (fraction of
# round trips slower than x), log scale. Run by `make bench-plot`:
#   gnuplot -e "data='FILE'; out='bench/notify-latency.png'" bench/notify-latency.gp
if (!exists("data")) data = 'build/bench/notify-latency.dat'
if (!exists("out")) out = 'bench/notify-latency.png'

set terminal pngcairo size 1200,480 font "DejaVu Sans,10"
set output out
set multiplot layout 1,2 title "readyd-bench: notify round trip (byte written -> event -> byte read -> answer)"

set logscale x
set xrange [2:1000]
set xlabel "round trip (us)"
set grid xtics ytics mxtics
set key bottom right

set ylabel "fraction of round trips <= x"
set yrange [0:1]
plot data index 0 using 1:2 with lines lw 2 lc rgb "#d62728" title "readyd", \
     data index 1 using 1:2 with lines lw 2 lc rgb "#1f77b4" title "bare relay (floor)", \
     data index 2 using 1:2 with lines lw 2 lc rgb "#2ca02c" title "direct epoll (reference)"

set logscale y
set yrange [0.0001:1]
set format y "10^{%L}"
set ylabel "fraction of round trips > x"
set key top right
plot data index 0 using 1:(1 - $2 + 1e-9) with lines lw 2 lc rgb "#d62728" title "readyd", \
     data index 1 using 1:(1 - $2 + 1e-9) with lines lw 2 lc rgb "#1f77b4" title "bare relay (floor)", \
     data index 2 using 1:(1 - $2 + 1e-9) with lines lw 2 lc rgb "#2ca02c" title "direct epoll (reference)"

unset multiplot
