/**
 * The dependency-heavy sample: a small Go program importing cobra, x/text, uuid and yaml.v3
 * (their dependencies come along). go.mod and go.sum are made on the host by `go mod tidy`.
 */
export function sampleMain(title: string): string {
  return `package main

import (
	"fmt"

	"github.com/google/uuid"
	"github.com/spf13/cobra"
	"golang.org/x/text/cases"
	"golang.org/x/text/language"
	"gopkg.in/yaml.v3"
)

func main() {
	cmd := &cobra.Command{Use: "sample", Run: func(*cobra.Command, []string) {
		out, _ := yaml.Marshal(map[string]string{
			"id":    uuid.NewString(),
			"title": cases.Title(language.English).String(${JSON.stringify(title)}),
		})
		fmt.Print(string(out))
	}}
	_ = cmd.Execute()
}
`;
}

export const SAMPLE_FILES: Record<string, string> = {
  'go.mod': 'module example.com/berth-bench-sample\n\ngo 1.22\n',
  'main.go': sampleMain('berth sample'),
  Dockerfile: 'FROM scratch\nCOPY app /app\nENTRYPOINT ["/app"]\n',
  '.dockerignore': '*\n!app\n',
};
