"""resolve: looks up each name's A records with dnspython's stub resolver (the search list
and ndots from /etc/resolv.conf), as a Python service using dnspython does; prints
"NAME ok ADDRESSES" or "NAME failed: ERROR" per name."""
import sys

import dns.resolver

resolver = dns.resolver.Resolver()
failed = False
for name in sys.argv[1:]:
    try:
        answer = resolver.resolve(name, "A", search=True)
        print(name, "ok", " ".join(record.address for record in answer))
    except Exception as error:  # every resolver error is an outcome to report
        print(name, "failed:", type(error).__name__)
        failed = True
sys.exit(2 if failed else 0)
