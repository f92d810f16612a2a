from django_tether.hashers import ScramSHA256PasswordHasher


class FastScramSHA256PasswordHasher(ScramSHA256PasswordHasher):
    """The real hasher; only new rows get 1,000 iterations so that tests creating users are fast."""

    def target_iterations(self):
        return self.iterations or 1000
