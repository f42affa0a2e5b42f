// million.go — the Go twin of bench/million.c: spawn N goroutines that each
// park on one event, wake them all, wait until all have ended; the time of
// each phase and the memory a parked goroutine holds.  `tools/bench --million`
// prints it beside greenring's figures.
//
//	go build -o million_go bench/go/million.go && ./million_go [-fibers N] [-rounds R]
//
// Every goroutine does what each greenring fiber does, step for step:
//
//	greenring                               Go
//	parked++; if last: event_set(parked)    ready.Done()      (a sync.WaitGroup)
//	event_wait(go)                          <-start           (a channel)
//	left--; if last: event_set(done)        done.Done()       (a sync.WaitGroup)
//
// The cycle runs R times (default 2), as million.c's: round 1 from nothing,
// later rounds with what the runtime kept (Go keeps dead goroutines and their
// stacks for reuse).  One OS thread runs Go code (GOMAXPROCS=1), as one
// greenring hub runs its fibers.  The garbage collector keeps its default settings: it is part of
// what a Go program pays.
//
// Output: one human line, then
//
//	RESULT impl=go hub=- fibers=.. round=.. spawn_park_us=.. wake_end_us=.. total_us=..
//	       spawn_park_cpu_us=.. wake_end_cpu_us=.. total_cpu_us=.. rss_kib=..
//
// with the same meaning as million.c's.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// rssKiB is the resident memory of the process, from /proc/self/statm.
func rssKiB() int64 {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		fmt.Fprintln(os.Stderr, "million_go:", err)
		os.Exit(1)
	}
	var size, resident int64
	if _, err := fmt.Sscan(string(data), &size, &resident); err != nil {
		fmt.Fprintln(os.Stderr, "million_go: /proc/self/statm:", err)
		os.Exit(1)
	}
	return resident * int64(os.Getpagesize()) / 1024
}

// cpuNs is the CPU time (user + system) of the process so far: on a shared
// machine the wall time of a phase also counts the time others held the CPU.
// It includes the garbage collector's and the runtime's other threads.
func cpuNs() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		fmt.Fprintln(os.Stderr, "million_go: getrusage:", err)
		os.Exit(1)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// cycle runs one spawn, park, wake, end cycle of n goroutines and prints its
// figures.
func cycle(n int, round int) {
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(n)
	done.Add(n)
	rss0 := rssKiB()

	t0, c0 := time.Now(), cpuNs()
	for i := 0; i < n; i++ {
		go func() {
			ready.Done()
			<-start
			done.Done()
		}()
	}
	ready.Wait()
	t1, c1 := time.Now(), cpuNs()
	rss1 := rssKiB()

	t1b, c1b := time.Now(), cpuNs() // reading RSS is not a phase
	close(start)
	done.Wait()
	t2, c2 := time.Now(), cpuNs()

	fn := float64(n)
	spawnPark := float64(t1.Sub(t0).Nanoseconds()) / 1e3 / fn
	wakeEnd := float64(t2.Sub(t1b).Nanoseconds()) / 1e3 / fn
	spawnParkCPU := float64(c1-c0) / 1e3 / fn
	wakeEndCPU := float64(c2-c1b) / 1e3 / fn
	rss := float64(rss1-rss0) / fn
	fmt.Printf("million: Go %s (GOMAXPROCS=1), %d goroutines, round %d: spawn+park %.3f s (%.3f us/fiber, "+
		"CPU %.3f), wake+end %.3f s (%.3f us/fiber, CPU %.3f), %.2f KiB RSS per parked goroutine\n",
		runtime.Version(), n, round, t1.Sub(t0).Seconds(), spawnPark, spawnParkCPU,
		t2.Sub(t1b).Seconds(), wakeEnd, wakeEndCPU, rss)
	fmt.Printf("RESULT impl=go hub=- fibers=%d round=%d spawn_park_us=%.3f wake_end_us=%.3f total_us=%.3f "+
		"spawn_park_cpu_us=%.3f wake_end_cpu_us=%.3f total_cpu_us=%.3f rss_kib=%.2f\n",
		n, round, spawnPark, wakeEnd, spawnPark+wakeEnd, spawnParkCPU, wakeEndCPU,
		spawnParkCPU+wakeEndCPU, rss)
}

func main() {
	fibers := flag.Int("fibers", 1000000, "goroutines to spawn")
	rounds := flag.Int("rounds", 2, "cycles to run in this process")
	flag.Parse()
	if *fibers < 1 || *rounds < 1 {
		fmt.Fprintln(os.Stderr, "million_go: -fibers and -rounds must be positive")
		os.Exit(1)
	}
	runtime.GOMAXPROCS(1)
	for r := 1; r <= *rounds; r++ {
		cycle(*fibers, r)
	}
}
