// Command sample-app is the HTTP server Berth deploys in its own tests and demos: `/` answers with
// the app's version and the pod's hostname, `/healthz` with "ok". It is a static binary that runs
// in an image built FROM scratch (infra/images.sh), so `sample-app version` is what `kubectl exec`
// can run inside it (and `sample-app cat`, stdin to stdout until it ends).
//
// Env: APP_VERSION (default: the version baked in at build time), PORT (default 8080).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// version is set at build time with -ldflags "-X main.version=v1"; APP_VERSION overrides it.
var version = "dev"

func appVersion() string {
	if v := os.Getenv("APP_VERSION"); v != "" {
		return v
	}
	return version
}

type hello struct {
	App      string `json:"app"`
	Version  string `json:"version"`
	Hostname string `json:"hostname"`
}

func get(url string) int {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	_, _ = io.Copy(os.Stdout, resp.Body)
	if resp.StatusCode >= 400 {
		return 1
	}
	return 0
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "version":
			fmt.Println(appVersion())
			return
		case "hostname":
			h, _ := os.Hostname()
			fmt.Println(h)
			return
		case "get":
			// `sample-app get URL`: the image has no shell or curl, so tests reach other pods with this.
			if len(os.Args) != 3 {
				fmt.Fprintf(os.Stderr, "usage: sample-app get URL\n")
				os.Exit(2)
			}
			os.Exit(get(os.Args[2]))
		case "cat":
			// `sample-app cat`: stdin to stdout until stdin ends (tests of exec's stdin and its end).
			if _, err := io.Copy(os.Stdout, os.Stdin); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			return
		default:
			fmt.Fprintf(os.Stderr, "usage: sample-app [version|hostname|get URL|cat]\n")
			os.Exit(2)
		}
	}

	hostname, _ := os.Hostname()
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	body := hello{App: "sample-app", Version: appVersion(), Hostname: hostname}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("%s %s from %s", r.Method, r.URL.Path, r.RemoteAddr)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(body)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})

	srv := &http.Server{Addr: ":" + port, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Printf("sample-app %s listening on :%s (hostname %s)", body.Version, port, hostname)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
	log.Printf("sample-app stopped")
}
