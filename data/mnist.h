// data/mnist.h — finding the MNIST files on disk and loading both splits.
//
// MNIST is four IDX files (see data/idx.h), each either raw or gzipped (name + ".gz"):
//   train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte
// This layer knows what MNIST looks like (28x28 images, labels 0..9, one label per image); the
// IDX layer below it knows only the file format. Errors are subliminal::DataError, one line each.
#pragma once

#include <cstdint>     // uint8_t, int64_t
#include <filesystem>  // std::filesystem::path
#include <string>      // std::string
#include <vector>      // std::vector

namespace subliminal::data {

// One split of MNIST, pixels and labels exactly as stored (no normalisation here).
struct MnistSplit {
  int64_t count = 0;            // number of images (= number of labels)
  int rows = 0, cols = 0;       // 28, 28
  std::vector<uint8_t> images;  // (count, rows*cols) raw pixels 0..255, row-major
  std::vector<uint8_t> labels;  // (count), each in 0..9
};

struct Mnist {
  MnistSplit train, test;
  std::filesystem::path dir;  // where the files were read from
};

// Finds the directory that holds MNIST. Search order:
//   1. flag_dir (the app's --data; empty = not given). If given, it must hold the files: an
//      error names --data rather than silently falling back to another place.
//   2. $MNIST_DIR (if set, it too must hold the files: no fallback to the places below)
//   3. ./data/mnist
//   4. ~/.pytorch/MNIST_data/MNIST/raw (where the notebook's torchvision download puts it)
// A directory qualifies when it holds all four files, each raw or gzipped. Nothing found ->
// DataError listing every place searched and how to fetch the data.
std::filesystem::path locate_mnist(const std::string& flag_dir);

// Loads both splits from dir (raw preferred over .gz where both exist). Checks that each split
// has as many labels as images (at least one), that images are 28x28 and that labels are in
// 0..9; the counts need not be 60000/10000, so tests can use small files. Errors name the file.
Mnist load_mnist(const std::filesystem::path& dir);

// What identifies the data a run read, whatever its folder or compression: the splits' sizes and
// a CRC-32 of their pixels and labels, "60000+10000 images, crc32 1a2b3c4d". A sweep's rows
// carry it, so that rows made from other data (another copy with other labels, Fashion-MNIST in
// the same format) are not taken for this data's.
std::string mnist_fingerprint(const Mnist& mnist);

// The MNIST files present in dir, raw and gzipped (whichever load_mnist reads, and the other
// copy): what no output of a run may overwrite.
std::vector<std::filesystem::path> mnist_files_in(const std::filesystem::path& dir);

}  // namespace subliminal::data
