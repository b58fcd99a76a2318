// Command berth-cri lists or removes the pod sandboxes of a CRI runtime. `infra/cells.sh down` uses
// it to stop every pod of cell-a's containerd through CRI, so that each pod's network is torn down
// through CNI (veth deleted, address released) before containerd stops. cri-tools' crictl would do
// the same, but it is not published on the Go module proxy.
//
//	berth-cri -endpoint unix:///path/containerd.sock pods
//	berth-cri -endpoint unix:///path/containerd.sock remove-pods
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	endpoint := flag.String("endpoint", "", "CRI endpoint, unix:///path/to.sock")
	timeout := flag.Duration("timeout", 2*time.Minute, "deadline for the whole command")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: berth-cri -endpoint unix:///path.sock pods|remove-pods\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *endpoint == "" || flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *endpoint, flag.Arg(0)); err != nil {
		fmt.Fprintf(os.Stderr, "berth-cri: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, endpoint, command string) error {
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", endpoint, err)
	}
	defer conn.Close()
	runtime := runtimeapi.NewRuntimeServiceClient(conn)
	pods, err := runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("list pod sandboxes: %w", err)
	}
	switch command {
	case "pods":
		for _, p := range pods.Items {
			fmt.Printf("%s\t%s\t%s/%s\n", p.Id[:13], p.State, p.Metadata.Namespace, p.Metadata.Name)
		}
		return nil
	case "remove-pods":
		failed := 0
		for _, p := range pods.Items {
			name := p.Metadata.Namespace + "/" + p.Metadata.Name
			// StopPodSandbox kills the pod's containers and runs CNI DEL; RemovePodSandbox deletes it.
			if _, err := runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
				fmt.Fprintf(os.Stderr, "stop pod %s: %v\n", name, err)
				failed++
				continue
			}
			if _, err := runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
				fmt.Fprintf(os.Stderr, "remove pod %s: %v\n", name, err)
				failed++
				continue
			}
			fmt.Printf("removed pod %s\n", name)
		}
		if failed > 0 {
			return fmt.Errorf("%d of %d pods were not removed", failed, len(pods.Items))
		}
		return nil
	default:
		return fmt.Errorf("unknown command %q (want pods or remove-pods)", command)
	}
}
