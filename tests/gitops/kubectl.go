package gitops

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
)

// Kubectl runs a kubectl binary against one kubeconfig.
type Kubectl struct {
	Binary     string
	Kubeconfig string
}

// Run runs kubectl with args and stdin; an error carries kubectl's stderr.
func (k Kubectl) Run(stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.Command(k.Binary, append([]string{"--kubeconfig", k.Kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// Get reads one object.
func (k Kubectl) Get(namespace, resource, name string) (map[string]any, error) {
	out, err := k.Run(nil, "get", "-n", namespace, resource, name, "-o", "json")
	if err != nil {
		return nil, err
	}
	var obj map[string]any
	return obj, json.Unmarshal(out, &obj)
}

// Patch sends a JSON merge patch, as Argo CD's API server does for an action, and returns the
// object the server stored.
func (k Kubectl) Patch(namespace, resource, name string, patch []byte, extra ...string) (map[string]any, error) {
	args := append([]string{"patch", "-n", namespace, resource, name, "--type", "merge", "-p", string(patch), "-o", "json"}, extra...)
	out, err := k.Run(nil, args...)
	if err != nil {
		return nil, err
	}
	var obj map[string]any
	return obj, json.Unmarshal(out, &obj)
}

// Resource is the kubectl resource name of a kind of ours (`tenants.fleet.molecule.ai`).
func Resource(kind string) (string, error) {
	plural, ok := Kinds[kind]
	if !ok {
		return "", fmt.Errorf("not a kind of %s: %q", Group, kind)
	}
	return plural + "." + Group, nil
}
