"""ntmobile.runtime: asyncio daemons. Modules that parse DNS import .dnsclasses first."""
