# A poison pill: fails every attempt.
import sys

sys.exit("always fails")
