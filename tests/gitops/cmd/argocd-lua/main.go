// Command argocd-lua runs the Argo CD scripts of deploy/argocd on live objects, as Argo CD would:
//
//	argocd-lua -kubeconfig K [-kubectl kubectl] -n NS health KIND NAME
//	argocd-lua -kubeconfig K [-kubectl kubectl] -n NS actions KIND NAME
//	argocd-lua -kubeconfig K [-kubectl kubectl] -n NS [-force] run KIND NAME ACTION
//
// `run` reads the object, runs the action's Lua (real clock), and sends the JSON merge patch
// from the object it read to the action's result, as Argo CD's API server does. It refuses an
// action that discovery.lua disables (the Argo CD UI greys it out) unless -force is given.
package main

import (
	"flag"
	"fmt"
	"os"
	"sort"

	"tenant-operator.invalid/gitops"
)

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig")
	kubectl := flag.String("kubectl", "kubectl", "kubectl binary")
	namespace := flag.String("n", "default", "namespace")
	force := flag.Bool("force", false, "run an action that discovery.lua disables")
	flag.Parse()
	if err := run(gitops.Kubectl{Binary: *kubectl, Kubeconfig: *kubeconfig}, *namespace, *force, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "argocd-lua:", err)
		os.Exit(1)
	}
}

func run(k gitops.Kubectl, ns string, force bool, args []string) error {
	if len(args) < 3 {
		return fmt.Errorf("usage: argocd-lua [flags] health|actions|run KIND NAME [ACTION]")
	}
	verb, kind, name := args[0], args[1], args[2]
	resource, err := gitops.Resource(kind)
	if err != nil {
		return err
	}
	obj, err := k.Get(ns, resource, name)
	if err != nil {
		return err
	}
	vm := gitops.VM{}
	switch verb {
	case "health":
		script, err := gitops.Script(kind, "health.lua")
		if err != nil {
			return err
		}
		hs, err := vm.Health(obj, script)
		if err != nil {
			return err
		}
		fmt.Printf("%s: %s\n", hs.Status, hs.Message)
	case "actions":
		actions, err := discover(vm, kind, obj)
		if err != nil {
			return err
		}
		names := make([]string, 0, len(actions))
		for n := range actions {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Printf("%-10s disabled=%v\n", n, actions[n].Disabled)
		}
	case "run":
		if len(args) != 4 {
			return fmt.Errorf("run needs KIND NAME ACTION")
		}
		action := args[3]
		actions, err := discover(vm, kind, obj)
		if err != nil {
			return err
		}
		a, ok := actions[action]
		if !ok {
			return fmt.Errorf("discovery.lua of %s offers no action %q", kind, action)
		}
		if a.Disabled && !force {
			return fmt.Errorf("action %q is disabled for %s/%s now (-force to run it anyway)", action, kind, name)
		}
		script, err := gitops.Script(kind, "actions", action, "action.lua")
		if err != nil {
			return err
		}
		result, err := vm.Act(obj, script)
		if err != nil {
			return err
		}
		patch, err := gitops.MergePatch(obj, result)
		if err != nil {
			return err
		}
		fmt.Printf("patch: %s\n", patch)
		if string(patch) == "{}" {
			return nil
		}
		if _, err := k.Patch(ns, resource, name, patch); err != nil {
			return err
		}
		fmt.Println("accepted")
	default:
		return fmt.Errorf("unknown verb %q", verb)
	}
	return nil
}

func discover(vm gitops.VM, kind string, obj map[string]any) (map[string]gitops.Action, error) {
	script, err := gitops.Script(kind, "actions", "discovery.lua")
	if err != nil {
		return nil, err
	}
	return vm.Discover(obj, script)
}
