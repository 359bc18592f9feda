"""firewall's pure core: selectors, policy validation, the grant model, explain, the compiler."""
