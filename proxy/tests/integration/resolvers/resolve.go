// resolve: looks up each name with Go's own resolver (PreferGo: the search list and ndots
// from /etc/resolv.conf), as most Go programs in containers do; prints "NAME ok ADDRESSES"
// or "NAME failed: ERROR" per name.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
)

func main() {
	r := &net.Resolver{PreferGo: true}
	failed := false
	for _, name := range os.Args[1:] {
		addrs, err := r.LookupIPAddr(context.Background(), name)
		if err != nil {
			fmt.Printf("%s failed: %v\n", name, err)
			failed = true
			continue
		}
		fmt.Printf("%s ok", name)
		for _, a := range addrs {
			fmt.Printf(" %s", a.IP)
		}
		fmt.Println()
	}
	if failed {
		os.Exit(2)
	}
}
