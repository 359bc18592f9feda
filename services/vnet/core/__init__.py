"""vnet's pure core: names, network validation, address allocation. No I/O, no asyncio."""
