"""One public function per command: typed input in, result dataclass out; never prints."""
