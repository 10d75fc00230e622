"""streamvault.dataplane"""
