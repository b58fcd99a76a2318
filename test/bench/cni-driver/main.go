// Command cni-driver runs CNI plugin calls the way a container runtime does: a process per call,
// the network conf on stdin, CNI_* in the environment, started with Go's os/exec as containerd
// starts them. test/bench/ipam.ts drives it, so the figures measure the plugins and not the cost
// of forking a large Node process for each call.
//
//	cni-driver -plugin PATH -conf FILE -mode pairs|add|del -concurrency C -count N -tag T
//
// prints one JSON object: {"seconds", "p50Ms", "p99Ms", "addresses", "distinct"} ("addresses"
// and "distinct" count what ADDs returned). A call that fails stops it: exit 1, the plugin's
// output on stderr.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

type result struct {
	Seconds   float64 `json:"seconds"`
	P50Ms     float64 `json:"p50Ms"`
	P99Ms     float64 `json:"p99Ms"`
	Addresses int     `json:"addresses"`
	Distinct  int     `json:"distinct"`
}

func main() {
	plugin := flag.String("plugin", "", "the plugin binary")
	confPath := flag.String("conf", "", "the network conf")
	mode := flag.String("mode", "pairs", "pairs (ADD then DEL), add or del")
	concurrency := flag.Int("concurrency", 1, "calls at once")
	count := flag.Int("count", 1, "containers")
	tag := flag.String("tag", "c", "container id prefix")
	flag.Parse()
	conf, err := os.ReadFile(*confPath)
	if err != nil {
		fail("reading the conf: %v", err)
	}

	var next atomic.Int64
	var mu sync.Mutex
	latencies := make([]float64, 0, *count)
	addresses := map[string]int{}
	total := 0
	call := func(command, id string) []byte {
		cmd := exec.Command(*plugin)
		cmd.Env = []string{
			"PATH=" + os.Getenv("PATH"), "CNI_COMMAND=" + command, "CNI_CONTAINERID=" + id,
			"CNI_IFNAME=eth0", "CNI_NETNS=/x", "CNI_PATH=/usr/lib/cni",
		}
		cmd.Stdin = bytes.NewReader(conf)
		out, err := cmd.Output()
		if err != nil {
			fail("%s %s %s: %v: %s", *plugin, command, id, err, out)
		}
		return out
	}
	started := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := int(next.Add(1)) - 1
				if n >= *count {
					return
				}
				id := fmt.Sprintf("%s-%d", *tag, n)
				t0 := time.Now()
				var address string
				if *mode != "del" {
					address = addressIn(call("ADD", id))
				}
				if *mode != "add" {
					call("DEL", id)
				}
				ms := float64(time.Since(t0).Microseconds()) / 1000
				mu.Lock()
				latencies = append(latencies, ms)
				if address != "" {
					addresses[address]++
					total++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	seconds := time.Since(started).Seconds()
	sort.Float64s(latencies)
	json.NewEncoder(os.Stdout).Encode(result{
		Seconds: seconds, P50Ms: percentile(latencies, 50), P99Ms: percentile(latencies, 99),
		Addresses: total, Distinct: len(addresses),
	})
}

func addressIn(out []byte) string {
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if json.Unmarshal(out, &r) != nil || len(r.IPs) == 0 {
		fail("ADD answered no address: %s", out)
	}
	return r.IPs[0].Address
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p / 100 * float64(len(sorted)))
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cni-driver: "+format+"\n", args...)
	os.Exit(1)
}
