// Command berth-ipam is the thin CNI IPAM plugin that containerd executes at every pod start. It
// forwards the request (the CNI_* variables and stdin) to the node's resident allocator over a unix
// socket and prints its answer; when there is no allocator to ask, it runs the direct plugin (the
// TypeScript plugin that allocates over etcd itself), so pods still start.
//
// The wire is services/cni-ipam/src/daemon/protocol.ts, byte for byte: one JSON line each way,
//
//	plugin → daemon: {"v":1,"env":{"CNI_COMMAND":"ADD",…},"stdin":"<netconf>"}
//	daemon → plugin: {"exitCode":0,"stdout":"<result or error JSON>"}
//
// It is Go, not Node, only for its start cost (docs/decisions.md): it parses no more of the
// network conf than the socket's path and the CNI version, and holds none of Berth's logic.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// directPlugin is the direct plugin's launcher, set at build time by infra/ipam.sh:
// -ldflags "-X main.directPlugin=/abs/path/berth-ipam-direct".
var directPlugin string

const (
	protocolVersion = 1
	defaultSocket   = "/run/berth/ipam.sock"
	// The whole exchange with the daemon, connect to answer. A daemon slower than this is treated
	// as failed: the direct plugin does the command again, which is safe since ADD and DEL are
	// idempotent per container and interface and CHECK only reads.
	answerDeadline = 20 * time.Second
	// What the direct plugin finds in its environment: why it runs (it counts itself in etcd).
	fallbackEnv = "BERTH_IPAM_FALLBACK"
	// The spec's "try again later": the runtime retries the pod's sandbox.
	codeTryAgainLater = 11
)

// forwardedEnv is protocol.ts's FORWARDED_ENV: every other variable stays behind.
var forwardedEnv = []string{"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"}

type request struct {
	V     int               `json:"v"`
	Env   map[string]string `json:"env"`
	Stdin string            `json:"stdin"`
}

type response struct {
	ExitCode *int    `json:"exitCode"`
	Stdout   *string `json:"stdout"`
}

// netconf is as much of the network conf as the thin plugin reads. Validating it is the daemon's
// (or the direct plugin's) job, so a conf that does not parse here is forwarded all the same.
type netconf struct {
	CNIVersion string `json:"cniVersion"`
	IPAM       struct {
		Socket string `json:"socket"`
	} `json:"ipam"`
}

func main() {
	stdin, err := io.ReadAll(os.Stdin)
	if err != nil {
		failTryAgain("1.0.0", "berth-ipam cannot read its stdin", err.Error())
	}
	var conf netconf
	_ = json.Unmarshal(stdin, &conf) // a bad conf is reported by whoever answers
	version := conf.CNIVersion
	if version == "" {
		version = "1.0.0"
	}
	socket := defaultSocket
	if filepath.IsAbs(conf.IPAM.Socket) {
		socket = conf.IPAM.Socket
	}

	answer, reason := askDaemon(socket, stdin)
	if answer != nil {
		if *answer.Stdout != "" {
			os.Stdout.WriteString(*answer.Stdout + "\n")
		}
		os.Exit(*answer.ExitCode)
	}
	os.Exit(runDirect(stdin, reason, version))
}

// askDaemon returns the daemon's answer, or nil and why there is none: "no-daemon" when nothing
// listens (no socket, refused, not permitted), "daemon-failed" when the connection broke or timed
// out before a whole answer.
func askDaemon(socket string, stdin []byte) (*response, string) {
	deadline := time.Now().Add(answerDeadline)
	conn, err := net.DialTimeout("unix", socket, answerDeadline)
	if err != nil {
		return nil, "no-daemon"
	}
	defer conn.Close()
	_ = conn.SetDeadline(deadline)

	env := map[string]string{}
	for _, name := range forwardedEnv {
		if value, ok := os.LookupEnv(name); ok {
			env[name] = value
		}
	}
	line, err := json.Marshal(request{V: protocolVersion, Env: env, Stdin: string(stdin)})
	if err != nil {
		return nil, "daemon-failed"
	}
	if _, err := conn.Write(append(line, '\n')); err != nil {
		return nil, "daemon-failed"
	}
	// Only a line that ends in a newline is a whole answer: a daemon killed mid-write leaves less.
	reply, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return nil, "daemon-failed"
	}
	var answer response
	if json.Unmarshal(reply, &answer) != nil || answer.ExitCode == nil || answer.Stdout == nil {
		return nil, "daemon-failed"
	}
	return &answer, ""
}

// runDirect runs the direct plugin with this process's environment, its stdin and its stdout, and
// returns the exit code to leave with.
func runDirect(stdin []byte, reason, version string) int {
	if directPlugin == "" {
		failTryAgain(version, "berth-ipam has no direct plugin to fall back to", "the resident allocator: "+reason)
	}
	cmd := exec.Command(directPlugin)
	cmd.Env = append(os.Environ(), fallbackEnv+"="+reason)
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	err := cmd.Run()
	var exited *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exited) && exited.Exited():
		return exited.ExitCode()
	case errors.As(err, &exited): // killed by a signal: it printed no result
		failTryAgain(version, "berth-ipam's direct plugin did not finish", exited.String())
	default: // not there, not executable
		failTryAgain(version, "berth-ipam cannot run its direct plugin "+directPlugin, err.Error())
	}
	return 1
}

// failTryAgain prints the spec's error JSON with code 11 (try again later) and exits 1: neither
// the daemon nor the direct plugin could answer, which a later attempt may fix.
func failTryAgain(version, msg, details string) {
	out, _ := json.Marshal(struct {
		CNIVersion string `json:"cniVersion"`
		Code       int    `json:"code"`
		Msg        string `json:"msg"`
		Details    string `json:"details"`
	}{version, codeTryAgainLater, msg, details})
	fmt.Fprintln(os.Stdout, string(out))
	os.Exit(1)
}
